#!/usr/bin/python3
"""End-to-end gate for the lab's OpenStack part (< 90 s), as acme\\backup:

  token (password, domain acme) -> server from the test image on the qcow2 libvirt compute,
  `networks: none` -> ACTIVE (checked in libvirt: domain = instance_name, disk = qcow2 file)
  -> RBD volume -> attach through Nova (checked in libvirt: rbd disk) -> detach -> volume
  snapshot -> volume from the snapshot -> delete all (clone before snapshot before volume).
  With the rbd compute (default when openstack.json lists it) a second server boots there in
  parallel, with a port on lab-net, and its root disk is checked to be vms/<uuid>_disk and
  its NIC a (never wired) vhost-user one. Neutron: networks, security groups, a port
  create/show/delete.

Everything it creates is named vprotect-smoke-* and deleted again, also on failure.
Usage: /usr/bin/python3 smoke.py [--no-rbd] [--keep] [-v]
Exit 0 = the lab works. Prints one line per step with its duration.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import uuid

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

LAB = os.environ.get("VPROTECT_LAB", "/tmp/vprotect-lab")
CFG = json.load(open(os.path.join(LAB, "openstack.json")))
T0 = time.time()
RUN = "vprotect-smoke-%s" % uuid.uuid4().hex[:6]
VERBOSE = False


def step(msg, t):
    print("%6.1fs  %-58s %5.1fs" % (time.time() - T0, msg, time.time() - t), flush=True)


class Api:
    def __init__(self, sess):
        self.sess = sess

    def __call__(self, method, service, path, body=None, ok=(200, 201, 202, 204), mv=None):
        kw = dict(endpoint_filter={"service_type": service, "interface": "public",
                                   "region_name": CFG["region"]}, raise_exc=False)
        if body is not None:
            kw["json"] = body
        if mv:
            kw["microversion"] = mv
            kw["microversion_service_type"] = service
        r = self.sess.request(path, method, **kw)
        if VERBOSE:
            print("        %s %s %s -> %s" % (method, service, path, r.status_code))
        if r.status_code not in ok:
            raise RuntimeError("%s %s %s -> %s %s" % (method, service, path, r.status_code,
                                                     r.text[:400]))
        return r.json() if r.content and r.status_code != 204 else None


def wait(what, fn, timeout=60, interval=0.3):
    end = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > end:
            raise RuntimeError("timed out (%ss) waiting for %s" % (timeout, what))
        time.sleep(interval)


def virsh(*args):
    return subprocess.run(["virsh", "-q", "-c", CFG.get("libvirtUri", "qemu:///system")] + list(args),
                          capture_output=True, text=True, check=True).stdout


def blk_iface(dom):
    return virsh("domiflist", dom)


def server_status(api, sid, want):
    s = api("GET", "compute", "/servers/%s" % sid, mv="2.79")["server"]
    if s["status"] == "ERROR":
        raise RuntimeError("server %s went to ERROR: %s" % (sid, s.get("fault")))
    return s if s["status"] == want else None


def volume_status(api, vid, want):
    v = api("GET", "volumev3", "/volumes/%s" % vid)["volume"]
    if v["status"].startswith("error"):
        raise RuntimeError("volume %s went to %s" % (vid, v["status"]))
    return v if v["status"] == want else None


def main():
    global VERBOSE
    p = argparse.ArgumentParser()
    p.add_argument("--no-rbd", action="store_true", help="skip the server on the rbd compute")
    p.add_argument("--keep", action="store_true", help="do not delete what was created")
    p.add_argument("--cleanup", action="store_true",
                   help="only delete leftovers (vprotect-smoke-*) of runs with --keep")
    p.add_argument("-v", action="store_true")
    args = p.parse_args()
    VERBOSE = args.v
    b = CFG["backup"]
    rbd_compute = next((c for c in CFG["computes"] if c["imagesType"] == "rbd"), None)
    if args.no_rbd:
        rbd_compute = None

    t = time.time()
    auth = v3.Password(auth_url=CFG["authUrl"], username=b["username"], password=b["password"],
                       user_domain_name=b["userDomain"], project_name=b["project"],
                       project_domain_name=b["projectDomain"])
    sess = ks_session.Session(auth=auth)
    api = Api(sess)
    sess.get_token()
    step("token as %s\\%s (project %s)" % (b["userDomain"], b["username"], b["project"]), t)

    created = {"servers": [], "volumes": [], "snapshots": [], "ports": []}
    if args.cleanup:
        mine = lambda items: [i["id"] for i in items if (i.get("name") or "").startswith("vprotect-smoke-")]
        created["servers"] = mine(api("GET", "compute", "/servers")["servers"])
        created["ports"] = mine(api("GET", "network", "/v2.0/ports")["ports"])
        created["snapshots"] = mine(api("GET", "volumev3", "/snapshots")["snapshots"])
        vols = api("GET", "volumev3", "/volumes/detail")["volumes"]
        # clones (made from a snapshot) last in the list: cleanup() deletes them first
        created["volumes"] = mine([v for v in vols if not v.get("snapshot_id")]) + \
            mine([v for v in vols if v.get("snapshot_id")])
        cleanup(api, created)
        return 0
    ok = False
    try:
        # --- servers (both computes in parallel: boot is mostly waiting)
        t = time.time()
        servers = []
        for az in ["nova"] + (["rbd"] if rbd_compute else []):
            # The rbd server gets a Neutron port (bound, not wired: see neutron_lab_mech.py).
            nets = "none" if az == "nova" else [{"uuid": CFG["network"]["networkId"]}]
            s = api("POST", "compute", "/servers", {"server": {
                "name": "%s-%s" % (RUN, az), "imageRef": CFG["image"]["id"],
                "flavorRef": CFG["flavors"]["m1.tiny"], "networks": nets,
                "availability_zone": az}}, mv="2.37")["server"]
            created["servers"].append(s["id"])
            servers.append((az, s["id"]))
        step("POST /servers x%d (networks: none%s)" % (len(servers), ", lab-net" if rbd_compute else ""), t)

        # --- neutron while the servers boot
        t = time.time()
        nets = api("GET", "network", "/v2.0/networks")["networks"]
        sgs = api("GET", "network", "/v2.0/security-groups")["security_groups"]
        api("GET", "network", "/v2.0/security-groups/%s" % sgs[0]["id"])
        port = api("POST", "network", "/v2.0/ports", {"port": {
            "name": RUN + "-port", "network_id": CFG["network"]["networkId"]}})["port"]
        created["ports"].append(port["id"])
        api("GET", "network", "/v2.0/ports/%s" % port["id"])
        api("GET", "network", "/v2.0/ports")
        api("DELETE", "network", "/v2.0/ports/%s" % port["id"])
        created["ports"].remove(port["id"])
        step("neutron: %d networks, %d SGs, port create/show/delete" % (len(nets), len(sgs)), t)

        t = time.time()
        for az, sid in servers:
            s = wait("server %s ACTIVE" % az, lambda: server_status(api, sid, "ACTIVE"), 90)
            hv = s["OS-EXT-SRV-ATTR:hypervisor_hostname"]
            dom = s["OS-EXT-SRV-ATTR:instance_name"]
            blk = virsh("domblklist", dom, "--details")
            if az == "nova":
                want_hv, want_disk = CFG["computeHost"], "%s/%s/disk" % (
                    CFG["computes"][0]["instancesPath"], sid)
            else:
                want_hv, want_disk = rbd_compute["hypervisorHostname"], "vms/%s_disk" % sid
            if hv != want_hv or want_disk not in blk:
                raise RuntimeError("server %s: hypervisor %s (want %s), disks:\n%s"
                                   % (sid, hv, want_hv, blk))
            what = "disk <instances>/<uuid>/disk" if az == "nova" else "disk vms/<uuid>_disk"
            if az != "nova":
                ports = api("GET", "network", "/v2.0/ports?device_id=%s" % sid)["ports"]
                if not ports or ports[0]["binding:host_id"] != s["OS-EXT-SRV-ATTR:host"] \
                        or "vhostuser" not in blk_iface(dom):
                    raise RuntimeError("server %s: port not bound here: %s" % (sid, ports))
                what += ", port %s" % ports[0]["status"]
            step("ACTIVE on %s as %s, %s" % (hv, dom, what), t)
        sid = servers[0][1]
        dom = api("GET", "compute", "/servers/%s" % sid, mv="2.79")["server"]["OS-EXT-SRV-ATTR:instance_name"]

        # --- cinder
        t = time.time()
        v = api("POST", "volumev3", "/volumes", {"volume": {"name": RUN + "-vol", "size": 1}})["volume"]
        created["volumes"].append(v["id"])
        wait("volume available", lambda: volume_status(api, v["id"], "available"), 60)
        step("RBD volume available", t)

        t = time.time()
        api("POST", "compute", "/servers/%s/os-volume_attachments" % sid,
            {"volumeAttachment": {"volumeId": v["id"]}}, mv="2.79")
        wait("volume in-use", lambda: volume_status(api, v["id"], "in-use"), 60)
        blk = virsh("domblklist", dom, "--details")
        if "volumes/volume-%s" % v["id"] not in blk:
            raise RuntimeError("attached volume not in the libvirt domain:\n" + blk)
        step("attached (libvirt: network disk volumes/volume-<id>)", t)

        t = time.time()
        api("DELETE", "compute", "/servers/%s/os-volume_attachments/%s" % (sid, v["id"]))
        wait("volume available after detach", lambda: volume_status(api, v["id"], "available"), 60)
        if "volume-%s" % v["id"] in virsh("domblklist", dom):
            raise RuntimeError("volume still in the libvirt domain after detach")
        step("detached", t)

        t = time.time()
        snap = api("POST", "volumev3", "/snapshots", {"snapshot": {
            "name": RUN + "-snap", "volume_id": v["id"]}})["snapshot"]
        created["snapshots"].append(snap["id"])
        wait("snapshot available", lambda: api("GET", "volumev3", "/snapshots/%s" % snap["id"])
             ["snapshot"]["status"] == "available", 60)
        step("volume snapshot available", t)

        t = time.time()
        clone = api("POST", "volumev3", "/volumes", {"volume": {
            "name": RUN + "-clone", "size": 1, "snapshot_id": snap["id"]}})["volume"]
        created["volumes"].append(clone["id"])
        wait("clone available", lambda: volume_status(api, clone["id"], "available"), 60)
        step("volume from snapshot available", t)
        ok = True
    finally:
        if not args.keep:
            cleanup(api, created)
    step("PASS" if ok else "FAIL", T0)
    return 0 if ok else 1


def cleanup(api, created):
    """Reverse order: servers (detaches), clones, snapshots, volumes. Clones before the
    snapshot: an RBD snapshot with a clone cannot be deleted (SnapshotIsBusy)."""
    t = time.time()
    errors = []

    def attempt(fn, *a):
        try:
            fn(*a)
        except Exception as e:  # keep cleaning up
            errors.append(str(e))

    for pid in created["ports"]:
        attempt(api, "DELETE", "network", "/v2.0/ports/%s" % pid, None, (204, 404))
    for sid in created["servers"]:
        attempt(api, "DELETE", "compute", "/servers/%s" % sid, None, (204, 404))
    for sid in created["servers"]:
        attempt(wait, "server deleted", lambda: api("GET", "compute", "/servers/%s" % sid,
                                                    ok=(200, 404)).get("server") is None, 60)
    vols = list(reversed(created["volumes"]))   # clone first
    for vid in vols[:-1] if created["snapshots"] else vols:
        attempt(delete_volume, api, vid)
    for snap in created["snapshots"]:
        attempt(api, "DELETE", "volumev3", "/snapshots/%s" % snap, None, (202, 404))
        attempt(wait, "snapshot deleted", lambda: api("GET", "volumev3", "/snapshots/%s" % snap,
                                                      ok=(200, 404)).get("snapshot") is None, 60)
    if created["snapshots"] and vols:
        attempt(delete_volume, api, vols[-1])
    step("cleanup" + (" (errors: %s)" % "; ".join(errors) if errors else ""), t)


def delete_volume(api, vid):
    v = api("GET", "volumev3", "/volumes/%s" % vid, ok=(200, 404)).get("volume")
    if v is None:
        return
    if v["status"] in ("in-use", "attaching", "detaching", "reserved"):
        # the server delete detaches it; give that a moment
        wait("volume %s detached" % vid, lambda: volume_status(api, vid, "available"), 60)
    api("DELETE", "volumev3", "/volumes/%s" % vid, ok=(202, 404))
    wait("volume %s deleted" % vid, lambda: api("GET", "volumev3", "/volumes/%s" % vid,
                                               ok=(200, 404)).get("volume") is None, 60)


if __name__ == "__main__":
    sys.exit(main())
