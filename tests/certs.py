"""Self-signed certificates for TLS tests, made by the openssl command-line tool."""
import os
import subprocess

from tests import oracles


def self_signed(directory, *addresses, name="bpfhook-test"):
    """(certificate path, key path) of a new self-signed EC certificate valid for the IP
    `addresses`; it is its own CA (what --ca-file and ssl's cafile take)."""
    cert, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    san = ",".join(f"IP:{a}" for a in addresses)
    r = subprocess.run([oracles.require("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return cert, key
