#!/usr/bin/python3
"""Short-lived Keystone tokens for tests of token expiry/re-authentication.

Keystone's token lifetime ([token] expiration, LAB_TOKEN_TTL, default 3600 s) is global and
changing it needs a restart. But Keystone caps a token issued for an application credential
at the credential's expires_at. So this creates an application credential of acme\\backup
(project acme-prod) that expires SECONDS from now, and prints JSON:

  {"applicationCredential": {"id", "secret", "expires_at"},
   "token": "<X-Subject-Token>", "expires_at": "<token expiry, = the credential's>",
   "authUrl": "http://127.0.0.1:5000/v3"}

Authenticating again with the credential keeps working until it expires; after that
Keystone answers 401 and the services reject the token (401). Expired credentials
named vprotect-short-* are deleted on each call.

Usage: /usr/bin/python3 short-token.py SECONDS [--user backup|alice|admin]
"""
import argparse
import datetime
import json
import os
import sys
import uuid

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

LAB = os.environ.get("VPROTECT_LAB", "/tmp/vprotect-lab")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("seconds", type=int)
    p.add_argument("--user", default="backup", choices=["backup", "alice", "admin"])
    args = p.parse_args()
    cfg = json.load(open(os.path.join(LAB, "openstack.json")))
    u = cfg[args.user]
    sess = ks_session.Session(auth=v3.Password(
        auth_url=cfg["authUrl"], username=u["username"], password=u["password"],
        user_domain_name=u["userDomain"], project_name=u["project"],
        project_domain_name=u["projectDomain"]))
    uid = sess.get_user_id()
    base = "%s/users/%s/application_credentials" % (cfg["authUrl"], uid)
    now = datetime.datetime.utcnow()
    for c in sess.get(base).json()["application_credentials"]:
        if c["name"].startswith("vprotect-short-") and c["expires_at"] and \
                datetime.datetime.fromisoformat(c["expires_at"].rstrip("Z")) < now:
            sess.delete("%s/%s" % (base, c["id"]), raise_exc=False)
    expires = (now + datetime.timedelta(seconds=args.seconds)).replace(microsecond=0)
    c = sess.post(base, json={"application_credential": {
        "name": "vprotect-short-%s" % uuid.uuid4().hex[:8],
        "expires_at": expires.isoformat() + "Z",
        "description": "vprotect lab: short-lived token test"}}).json()["application_credential"]
    r = ks_session.Session().post(cfg["authUrl"] + "/auth/tokens", json={"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"id": c["id"], "secret": c["secret"]}}}})
    print(json.dumps({
        "applicationCredential": {"id": c["id"], "secret": c["secret"],
                                  "expires_at": c["expires_at"]},
        "token": r.headers["X-Subject-Token"],
        "expires_at": r.json()["token"]["expires_at"],
        "authUrl": cfg["authUrl"]}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
