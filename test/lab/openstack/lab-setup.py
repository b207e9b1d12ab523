#!/usr/bin/python3
"""Idempotent OpenStack content of the vprotect lab (run by openstack-up.sh).

    lab-setup.py keystone     domains, projects, users, roles, catalog, app credential
    lab-setup.py resources --compute-qcow2 HOST [--compute-rbd HOST] [--virt-type T]
                              flavors, test image, volume type, alice's keypair, the rbd
                              AZ; then $LAB/openstack.json, $LAB/etc/clouds.yaml, openrc files

Plain REST through keystoneauth (one Python start-up instead of dozens of `openstack` CLI
calls). Never changes the password of an existing user: that would revoke the tokens of
running services (wipe the lab to change passwords).
"""
import argparse
import array
import hashlib
import json
import os
import sys
import time

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

LAB = os.environ.get("VPROTECT_LAB", "/tmp/vprotect-lab")
ETC = os.path.join(LAB, "etc")
AUTH_URL = "http://127.0.0.1:5000/v3"
REGION = "RegionOne"
ADMIN_PASS = "lab-admin-pass"
SERVICE_PASS = "lab-service-pass"
BACKUP_PASS = "lab-backup-pass"
ALICE_PASS = "lab-alice-pass"
APPCRED_NAME = "vprotect-lab"
APPCRED_FILE = os.path.join(ETC, "backup-appcred.json")
ALICE_KEY = os.path.join(ETC, "alice-key")

SERVICE_USERS = ["nova", "glance", "cinder", "placement", "neutron"]
# service type -> (name, url)
CATALOG = {
    "image": ("glance", "http://127.0.0.1:9292"),
    "placement": ("placement", "http://127.0.0.1:8778"),
    "compute": ("nova", "http://127.0.0.1:8774/v2.1"),
    "volumev3": ("cinderv3", "http://127.0.0.1:8776/v3/%(project_id)s"),
    "block-storage": ("cinder", "http://127.0.0.1:8776/v3/%(project_id)s"),
    "network": ("neutron", "http://127.0.0.1:9696"),
}

IMAGE_NAME = "vprotect-lab-raw"
IMAGE_SIZE = 64 * 1024 * 1024
FLAVORS = [
    # id, name, ram MB, vcpus, disk GB, ephemeral GB, swap MB
    ("1", "m1.tiny", 128, 1, 1, 0, 0),
    ("2", "m1.small", 256, 1, 2, 0, 0),
    ("3", "m1.tiny.eph", 128, 1, 1, 1, 64),
]


def log(msg):
    print("[lab-setup %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def make_session(username, password, project, user_domain="Default",
                 project_domain="Default"):
    auth = v3.Password(auth_url=AUTH_URL, username=username, password=password,
                       user_domain_name=user_domain, project_name=project,
                       project_domain_name=project_domain)
    return ks_session.Session(auth=auth)


class Api:
    """Tiny REST helper: api.get("identity", "/projects", params=...) -> parsed JSON."""

    def __init__(self, sess):
        self.sess = sess

    def call(self, method, service, path, body=None, ok=(200, 201, 202, 204),
             microversion=None, headers=None, data=None, params=None):
        kw = dict(endpoint_filter={"service_type": service, "interface": "public",
                                   "region_name": REGION},
                  raise_exc=False, headers=dict(headers or {}))
        if body is not None:
            kw["json"] = body
        if data is not None:
            kw["data"] = data
        if params:
            kw["params"] = params
        if microversion:
            kw["microversion"] = microversion
            kw["microversion_service_type"] = service
        resp = self.sess.request(path, method, **kw)
        if resp.status_code not in ok:
            raise RuntimeError("%s %s %s -> %s %s" % (method, service, path,
                                                     resp.status_code, resp.text[:500]))
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def get(self, service, path, **kw):
        return self.call("GET", service, path, **kw)

    def post(self, service, path, body=None, **kw):
        return self.call("POST", service, path, body, **kw)


def wait_until(what, fn, timeout=120, interval=0.5):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            v = fn()
            if v:
                return v
        except (ks_exc.ConnectionError, RuntimeError) as e:  # service still starting
            last = e
        time.sleep(interval)
    raise RuntimeError("timed out waiting for %s (%s)" % (what, last))


# ------------------------------------------------------------------ keystone

def find_one(api, path, key, **params):
    items = api.get("identity", path, params=params)[key]
    return items[0] if items else None


def ensure_domain(api, name):
    d = find_one(api, "/domains", "domains", name=name)
    if d:
        return d["id"]
    log("domain %s" % name)
    return api.post("identity", "/domains", {"domain": {"name": name, "enabled": True}})["domain"]["id"]


def ensure_project(api, name, domain_id, description=""):
    p = find_one(api, "/projects", "projects", name=name, domain_id=domain_id)
    if p:
        return p["id"]
    log("project %s" % name)
    return api.post("identity", "/projects", {"project": {
        "name": name, "domain_id": domain_id, "description": description,
        "enabled": True}})["project"]["id"]


def ensure_user(api, name, domain_id, password, project_id=None):
    u = find_one(api, "/users", "users", name=name, domain_id=domain_id)
    if u:
        return u["id"]
    log("user %s" % name)
    body = {"name": name, "domain_id": domain_id, "password": password, "enabled": True}
    if project_id:
        body["default_project_id"] = project_id
    return api.post("identity", "/users", {"user": body})["user"]["id"]


def ensure_role(api, name):
    r = find_one(api, "/roles", "roles", name=name)
    if r:
        return r["id"]
    log("role %s" % name)
    return api.post("identity", "/roles", {"role": {"name": name}})["role"]["id"]


def grant(api, project_id, user_id, role_id):
    # PUT is idempotent (204 when new, 204 when it already exists).
    api.call("PUT", "identity", "/projects/%s/users/%s/roles/%s" % (project_id, user_id, role_id))


def ensure_service_endpoints(api, stype, name, url):
    s = find_one(api, "/services", "services", type=stype)
    if s:
        sid = s["id"]
    else:
        log("service %s (%s)" % (name, stype))
        sid = api.post("identity", "/services", {"service": {
            "type": stype, "name": name, "enabled": True}})["service"]["id"]
    have = api.get("identity", "/endpoints", params={"service_id": sid})["endpoints"]
    for iface in ("public", "internal", "admin"):
        cur = [e for e in have if e["interface"] == iface]
        if cur and cur[0]["url"] == url:
            continue
        for e in cur:
            api.call("DELETE", "identity", "/endpoints/%s" % e["id"])
        api.post("identity", "/endpoints", {"endpoint": {
            "service_id": sid, "interface": iface, "url": url, "region_id": REGION,
            "enabled": True}})


def ensure_appcred(backup_sess, user_id):
    """An application credential of acme\\backup on acme-prod; its secret is only shown
    at creation, so it lives in APPCRED_FILE. Re-created when the file is missing."""
    api = Api(backup_sess)
    path = "/users/%s/application_credentials" % user_id
    if os.path.exists(APPCRED_FILE):
        with open(APPCRED_FILE) as f:
            saved = json.load(f)
        r = backup_sess.get(AUTH_URL + path + "/" + saved["id"], raise_exc=False)
        if r.status_code == 200:
            return saved
    for c in api.get("identity", path, params={"name": APPCRED_NAME})["application_credentials"]:
        api.call("DELETE", "identity", path + "/" + c["id"])
    log("application credential %s for backup" % APPCRED_NAME)
    c = api.post("identity", path, {"application_credential": {
        "name": APPCRED_NAME,
        "description": "vprotect lab: app-credential auth tests"}})["application_credential"]
    saved = {"id": c["id"], "name": c["name"], "secret": c["secret"],
             "user_id": user_id, "project_id": c["project_id"],
             "roles": [r["name"] for r in c["roles"]], "expires_at": c["expires_at"],
             "auth_url": AUTH_URL}
    tmp = APPCRED_FILE + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(saved, f, indent=2)
    os.rename(tmp, APPCRED_FILE)
    return saved


def do_keystone():
    os.makedirs(ETC, exist_ok=True)
    admin = Api(make_session("admin", ADMIN_PASS, "admin"))
    wait_until("keystone admin token", lambda: admin.get("identity", "/domains"), 60)
    default = "default"
    roles = {n: ensure_role(admin, n) for n in ("admin", "member", "reader", "service")}

    service_p = ensure_project(admin, "service", default, "OpenStack service users")
    for name in SERVICE_USERS:
        uid = ensure_user(admin, name, default, SERVICE_PASS, service_p)
        # 'service' is what service_token_roles_required checks for.
        grant(admin, service_p, uid, roles["admin"])
        grant(admin, service_p, uid, roles["service"])

    acme = ensure_domain(admin, "acme")
    acme_prod = ensure_project(admin, "acme-prod", acme, "vprotect lab: the backup user's project")
    backup = ensure_user(admin, "backup", acme, BACKUP_PASS, acme_prod)
    for r in ("admin", "member", "reader"):
        grant(admin, acme_prod, backup, roles[r])

    demo = ensure_project(admin, "demo", default, "vprotect lab: a non-admin user's project")
    alice = ensure_user(admin, "alice", default, ALICE_PASS, demo)
    for r in ("member", "reader"):
        grant(admin, demo, alice, roles[r])
    # admin also sees the demo project (so tests can act there as admin).
    admin_uid = find_one(admin, "/users", "users", name="admin", domain_id=default)["id"]
    grant(admin, demo, admin_uid, roles["admin"])

    for stype, (name, url) in CATALOG.items():
        ensure_service_endpoints(admin, stype, name, url)

    ensure_appcred(make_session("backup", BACKUP_PASS, "acme-prod", "acme", "acme"), backup)


# ------------------------------------------------------------------ resources

def image_bytes():
    """64 MiB raw disk: a boot sector that halts the CPU for good (cli; hlt; jmp $-1), so a
    guest with this disk uses no CPU, plus data at known offsets:
      512 B      ASCII "vprotect-lab-image v1\\n"
      1 MiB      4 MiB where every 8-byte big-endian word holds its own byte offset
      32 MiB     1 MiB of b"Z"
      64 MiB-4K  4 KiB of b"E"
      elsewhere  zeros"""
    buf = bytearray(IMAGE_SIZE)
    buf[0:4] = b"\xfa\xf4\xeb\xfd"
    buf[510:512] = b"\x55\xaa"
    marker = b"vprotect-lab-image v1\n"
    buf[512:512 + len(marker)] = marker
    start, length = 1 << 20, 4 << 20
    words = array.array("Q", range(start, start + length, 8))
    if sys.byteorder == "little":
        words.byteswap()                      # big-endian words
    buf[start:start + length] = words.tobytes()
    buf[32 << 20:33 << 20] = b"Z" * (1 << 20)
    buf[IMAGE_SIZE - 4096:] = b"E" * 4096
    return bytes(buf)


def ensure_image(api):
    imgs = api.get("image", "/v2/images", params={"name": IMAGE_NAME})["images"]
    for im in imgs:
        if im["status"] == "active":
            return im
    for im in imgs:  # queued/saving leftovers of an interrupted run
        log("deleting unusable image %s (%s)" % (im["id"], im["status"]))
        api.call("DELETE", "image", "/v2/images/%s" % im["id"])
    data = image_bytes()
    log("image %s (%d MiB raw)" % (IMAGE_NAME, len(data) >> 20))
    im = api.post("image", "/v2/images", {
        "name": IMAGE_NAME, "disk_format": "raw", "container_format": "bare",
        "visibility": "public", "min_disk": 1, "min_ram": 0,
        # virtio-blk unplug waits ~200 s for a guest OS to acknowledge; virtio-scsi not.
        "hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi",
        "vprotect_lab": "boot sector cli;hlt + known data (see lab-setup.py image_bytes)",
    })
    api.call("PUT", "image", "/v2/images/%s/file" % im["id"], data=data,
             headers={"Content-Type": "application/octet-stream"})
    return api.get("image", "/v2/images/%s" % im["id"])


def ensure_flavors(api):
    have = {f["id"]: f for f in api.get("compute", "/flavors/detail",
                                        params={"is_public": "None"})["flavors"]}
    out = {}
    for fid, name, ram, vcpus, disk, eph, swap in FLAVORS:
        if fid not in have:
            log("flavor %s" % name)
            api.post("compute", "/flavors", {"flavor": {
                "id": fid, "name": name, "ram": ram, "vcpus": vcpus, "disk": disk,
                "OS-FLV-EXT-DATA:ephemeral": eph, "swap": swap,
                "os-flavor-access:is_public": True}})
        out[name] = fid
    return out


def ensure_volume_type(api):
    types = api.get("volumev3", "/types")["volume_types"]
    t = next((t for t in types if t["name"] == "ceph"), None)
    if not t:
        log("volume type ceph")
        t = api.post("volumev3", "/types", {"volume_type": {
            "name": "ceph", "os-volume-type-access:is_public": True,
            "extra_specs": {"volume_backend_name": "ceph"}}})["volume_type"]
    return t["id"]


def ensure_rbd_az(api, host):
    aggs = api.get("compute", "/os-aggregates")["aggregates"]
    agg = next((a for a in aggs if a["name"] == "rbd"), None)
    if not agg:
        log("aggregate/AZ rbd")
        agg = api.post("compute", "/os-aggregates", {"aggregate": {
            "name": "rbd", "availability_zone": "rbd"}})["aggregate"]
    if host not in (agg.get("hosts") or []):
        api.post("compute", "/os-aggregates/%s/action" % agg["id"], {"add_host": {"host": host}})


def ensure_alice_keypair():
    if not os.path.exists(ALICE_KEY):
        os.system("ssh-keygen -q -t ed25519 -N '' -C alice@vprotect-lab -f %s" % ALICE_KEY)
    pub = open(ALICE_KEY + ".pub").read().strip()
    alice = Api(make_session("alice", ALICE_PASS, "demo"))
    r = alice.call("GET", "compute", "/os-keypairs/alice-key", ok=(200, 404))
    r = (r or {}).get("keypair")   # a 404 answers {"itemNotFound": ...}
    if r and r["public_key"].strip() == pub:
        return r
    if r:
        alice.call("DELETE", "compute", "/os-keypairs/alice-key")
    log("keypair alice-key (owned by alice)")
    return alice.post("compute", "/os-keypairs", {"keypair": {
        "name": "alice-key", "public_key": pub}})["keypair"]


def hypervisor_of(api, host):
    hvs = api.get("compute", "/os-hypervisors/detail", microversion="2.53")["hypervisors"]
    for h in hvs:
        if h["service"]["host"] == host:
            return h
    return None


def write_clouds(appcred):
    clouds = {
        "lab-admin": {"auth": {"auth_url": AUTH_URL, "username": "admin", "password": ADMIN_PASS,
                               "user_domain_name": "Default", "project_name": "admin",
                               "project_domain_name": "Default"}},
        "lab-backup": {"auth": {"auth_url": AUTH_URL, "username": "backup",
                                "password": BACKUP_PASS, "user_domain_name": "acme",
                                "project_name": "acme-prod", "project_domain_name": "acme"}},
        "lab-backup-appcred": {"auth_type": "v3applicationcredential",
                               "auth": {"auth_url": AUTH_URL,
                                        "application_credential_id": appcred["id"],
                                        "application_credential_secret": appcred["secret"]}},
        "lab-alice": {"auth": {"auth_url": AUTH_URL, "username": "alice", "password": ALICE_PASS,
                               "user_domain_name": "Default", "project_name": "demo",
                               "project_domain_name": "Default"}},
    }
    lines = ["# vprotect lab (written by test/lab/openstack/lab-setup.py)", "clouds:"]
    for name, c in clouds.items():
        lines.append("  %s:" % name)
        if "auth_type" in c:
            lines.append("    auth_type: %s" % c["auth_type"])
        lines.append("    auth:")
        for k, v in c["auth"].items():
            lines.append("      %s: %s" % (k, json.dumps(v)))
        lines += ["    region_name: %s" % REGION, "    interface: public",
                  "    identity_api_version: 3"]
    write(os.path.join(ETC, "clouds.yaml"), "\n".join(lines) + "\n", 0o600)

    def openrc(user, pw, udom, proj, pdom):
        return ("# vprotect lab: source me (openstack CLI: /usr/bin/openstack)\n"
                "export OS_AUTH_URL=%s OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=%s\n"
                "export OS_INTERFACE=public\n"
                "export OS_USERNAME=%s OS_PASSWORD=%s OS_USER_DOMAIN_NAME=%s\n"
                "export OS_PROJECT_NAME=%s OS_PROJECT_DOMAIN_NAME=%s\n"
                "unset OS_CLOUD OS_AUTH_TYPE OS_APPLICATION_CREDENTIAL_ID "
                "OS_APPLICATION_CREDENTIAL_SECRET\n"
                % (AUTH_URL, REGION, user, pw, udom, proj, pdom))
    write(os.path.join(ETC, "admin-openrc"), openrc("admin", ADMIN_PASS, "Default", "admin", "Default"), 0o600)
    write(os.path.join(ETC, "backup-openrc"), openrc("backup", BACKUP_PASS, "acme", "acme-prod", "acme"), 0o600)
    write(os.path.join(ETC, "alice-openrc"), openrc("alice", ALICE_PASS, "Default", "demo", "Default"), 0o600)


def write(path, text, mode=0o644):
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def do_resources(args):
    admin_sess = make_session("admin", ADMIN_PASS, "admin")
    admin = Api(admin_sess)
    ident = admin.get("identity", "/projects", params={"name": "acme-prod"})["projects"][0]
    acme_dom = admin.get("identity", "/domains", params={"name": "acme"})["domains"][0]
    demo = admin.get("identity", "/projects", params={"name": "demo"})["projects"][0]
    users = {u: admin.get("identity", "/users", params={"name": u})["users"][0]["id"]
             for u in ("admin", "backup", "alice")}

    flavors = ensure_flavors(admin)
    image = ensure_image(admin)
    vtype = ensure_volume_type(admin)
    keypair = ensure_alice_keypair()
    if args.compute_rbd:
        ensure_rbd_az(admin, args.compute_rbd)

    hv = wait_until("hypervisor %s" % args.compute_qcow2,
                    lambda: hypervisor_of(admin, args.compute_qcow2), 120)
    computes = [{"host": args.compute_qcow2, "hypervisorHostname": hv["hypervisor_hostname"],
                 "availabilityZone": "nova", "imagesType": "qcow2",
                 "instancesPath": os.path.join(LAB, "openstack/data/nova/instances")}]
    if args.compute_rbd:
        hv2 = wait_until("hypervisor %s" % args.compute_rbd,
                         lambda: hypervisor_of(admin, args.compute_rbd), 120)
        computes.append({"host": args.compute_rbd, "hypervisorHostname": hv2["hypervisor_hostname"],
                         "availabilityZone": "rbd", "imagesType": "rbd", "rbdPool": "vms",
                         "instancesPath": os.path.join(LAB, "openstack/data/nova/instances-rbd")})

    with open(APPCRED_FILE) as f:
        appcred = json.load(f)
    write_clouds(appcred)
    data = image_bytes()
    doc = {
        "authUrl": AUTH_URL,
        "region": REGION,
        "interface": "public",
        "admin": {"username": "admin", "password": ADMIN_PASS, "userDomain": "Default",
                  "project": "admin", "projectDomain": "Default", "userId": users["admin"]},
        "backup": {"username": "backup", "password": BACKUP_PASS, "userDomain": "acme",
                   "userDomainId": acme_dom["id"], "project": "acme-prod",
                   "projectDomain": "acme", "projectId": ident["id"], "userId": users["backup"],
                   "roles": ["admin", "member", "reader"]},
        "alice": {"username": "alice", "password": ALICE_PASS, "userDomain": "Default",
                  "project": "demo", "projectDomain": "Default", "projectId": demo["id"],
                  "userId": users["alice"], "roles": ["member", "reader"],
                  "keypair": keypair["name"], "privateKeyFile": ALICE_KEY},
        "serviceUsers": {"project": "service", "password": SERVICE_PASS, "users": SERVICE_USERS},
        "appCredential": {"id": appcred["id"], "name": appcred["name"], "file": APPCRED_FILE,
                          "user": "backup", "project": "acme-prod"},
        "cloudsYaml": os.path.join(ETC, "clouds.yaml"),
        "clouds": ["lab-admin", "lab-backup", "lab-backup-appcred", "lab-alice"],
        "openrc": {u: os.path.join(ETC, "%s-openrc" % u) for u in ("admin", "backup", "alice")},
        "image": {"id": image["id"], "name": IMAGE_NAME, "diskFormat": "raw",
                  "size": IMAGE_SIZE, "sha256": hashlib.sha256(data).hexdigest(),
                  "properties": {"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi"}},
        "flavors": flavors,
        "volumeType": {"id": vtype, "name": "ceph", "backend": "lab@ceph#ceph",
                       "rbdPool": "volumes"},
        "computeHost": computes[0]["hypervisorHostname"],
        "availabilityZone": "nova",
        "computes": computes,
        "virtType": args.virt_type,
        "libvirtUri": "qemu:///system",
        "network": {"service": "neutron-server (ML2, no agents, lab_nowire binding)",
                    "createServersWith": "networks: none (or a port on lab-net)"},
        "endpoints": {stype: url for stype, (_, url) in CATALOG.items()},
        "logs": os.path.join(LAB, "logs"),
        "readyMarker": os.path.join(LAB, "state/openstack.ready"),
    }
    net = ensure_network(admin)
    if net:
        doc["network"].update(net)
    write(os.path.join(LAB, "openstack.json"), json.dumps(doc, indent=2) + "\n", 0o644)


def ensure_network(admin):
    """A shared flat network with a subnet, so servers can also be booted with a port."""
    nets = admin.get("network", "/v2.0/networks", params={"name": "lab-net"})["networks"]
    if nets:
        net = nets[0]
    else:
        log("network lab-net")
        net = admin.post("network", "/v2.0/networks", {"network": {
            "name": "lab-net", "shared": True, "provider:network_type": "flat",
            "provider:physical_network": "physnet1"}})["network"]
    subs = admin.get("network", "/v2.0/subnets", params={"network_id": net["id"]})["subnets"]
    if not subs:
        # Neutron only books these addresses: nothing on the host ever gets one.
        admin.post("network", "/v2.0/subnets", {"subnet": {
            "name": "lab-subnet", "network_id": net["id"], "ip_version": 4,
            "cidr": "198.51.100.0/24", "enable_dhcp": False, "gateway_ip": None}})
    return {"networkId": net["id"], "networkName": "lab-net"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["keystone", "resources"])
    p.add_argument("--compute-qcow2")
    p.add_argument("--compute-rbd", default="")
    p.add_argument("--virt-type", default="qemu")
    args = p.parse_args()
    if args.phase == "keystone":
        do_keystone()
    else:
        do_resources(args)


if __name__ == "__main__":
    sys.exit(main())
