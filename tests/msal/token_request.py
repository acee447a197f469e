"""Makes one client-credentials token request with MSAL for Python against the emulator,
for tests/it/credentials.rs to compare with photosync's.

MSAL only talks to https authorities, so its HTTP client is given a session that answers
the tenant discovery itself (naming the real token endpoint, as Entra does) and sends every
other request to the emulator over plain http. The assertion's `aud` is therefore the real
token endpoint URL; the emulator refuses it for that, which does not matter here: only the
request is compared.

Usage: python token_request.py '{"url": ..., "tenant": ..., "client_id": ...,
        "scope": ..., "secret": ... | "key_pem": ..., "cert_pem": ..., "alg": "rs256" | "ps256"}'
"""
import hashlib
import json
import sys

import msal
import requests

AUTHORITY_HOST = "https://login.microsoftonline.com"


class EmulatorSession:
    def __init__(self, url, tenant):
        self.url = url.rstrip("/")
        self.tenant = tenant
        self.session = requests.Session()

    def _to_emulator(self, url):
        return self.url + url[len(AUTHORITY_HOST):] if url.startswith(AUTHORITY_HOST) else url

    def get(self, url, **kwargs):
        if url.endswith("/.well-known/openid-configuration"):
            base = "{}/{}".format(AUTHORITY_HOST, self.tenant)
            resp = requests.models.Response()
            resp.status_code = 200
            resp._content = json.dumps({
                "token_endpoint": base + "/oauth2/v2.0/token",
                "authorization_endpoint": base + "/oauth2/v2.0/authorize",
                "issuer": base + "/v2.0",
            }).encode()
            return resp
        return self.session.get(self._to_emulator(url), **kwargs)

    def post(self, url, **kwargs):
        return self.session.post(self._to_emulator(url), **kwargs)

    def close(self):
        self.session.close()


def main():
    args = json.loads(sys.argv[1])
    if "secret" in args:
        credential = args["secret"]
    else:
        credential = {"private_key": args["key_pem"]}
        if args["alg"] == "rs256":
            der = __import__("ssl").PEM_cert_to_DER_cert(args["cert_pem"])
            credential["thumbprint"] = hashlib.sha1(der).hexdigest()
        else:
            credential["public_certificate"] = args["cert_pem"]
    app = msal.ConfidentialClientApplication(
        args["client_id"],
        client_credential=credential,
        authority="{}/{}".format(AUTHORITY_HOST, args["tenant"]),
        http_client=EmulatorSession(args["url"], args["tenant"]),
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(scopes=[args["scope"]])
    print(json.dumps({"msal": msal.__version__, "error": result.get("error")}))


if __name__ == "__main__":
    main()
