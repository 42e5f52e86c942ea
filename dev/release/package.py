#!/usr/bin/env python3
"""Packages a built provider binary as a release: the zip, the manifest, SHA256SUMS
(signed when a GPG key is given), a filesystem mirror and a network-mirror tree.

    dev/release/package.py --binary target/debug/terraform-provider-circleci --out dist

`make release` calls this with the release binary; the tests call it with the debug
binary they already built. Python 3 standard library only.

The hashes Terraform checks are computed here, not taken from Terraform:
  h1:  Go's dirhash "Hash1" of the package's files: SHA-256 over the lines
       "<sha256 hex of the file>  <name>\n" sorted by name, base64, prefixed "h1:".
  zh:  SHA-256 (hex) of the zip file itself.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "terraform-provider-circleci"
DEFAULT_ADDRESS = "registry.terraform.io/circleci/circleci"
# Terraform reads this from the manifest of a registry release: the protocol we speak.
MANIFEST = {"version": 1, "metadata": {"protocol_versions": ["6.0"]}}


def cargo_version() -> str:
    text = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    m = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if not m:
        sys.exit("package: no version in Cargo.toml")
    return m.group(1)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def h1_of_zip(path: Path) -> str:
    """Go dirhash Hash1 over every entry of the zip, as Terraform computes it."""
    with zipfile.ZipFile(path) as z:
        # Files only (Terraform skips directory entries), in the order of their names,
        # not of the lines: the two differ as soon as there are two files.
        files = sorted((i for i in z.infolist() if not i.is_dir()), key=lambda i: i.filename)
        lines = [f"{sha256_hex(z.read(info))}  {info.filename}\n" for info in files]
    digest = hashlib.sha256("".join(lines).encode("utf-8")).digest()
    return "h1:" + base64.b64encode(digest).decode("ascii")


def zh_of_file(path: Path) -> str:
    return "zh:" + sha256_hex(path.read_bytes())


def write_zip(binary: Path, inner_name: str, dest: Path) -> None:
    """One executable file, with fixed metadata so that the same binary gives the
    same zip (and so the same zh: hash) every time."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))  # 1980-01-01
    stamp = time.gmtime(max(epoch, 315532800))[:6]
    info = zipfile.ZipInfo(inner_name, date_time=stamp)
    info.create_system = 3  # Unix, so that the mode below is honoured
    info.external_attr = (0o100755 & 0xFFFF) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr(info, binary.read_bytes())
    tmp.replace(dest)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def sign(sums: Path, key: str) -> Path:
    sig = sums.with_name(sums.name + ".sig")
    subprocess.run(
        ["gpg", "--batch", "--yes", "--local-user", key, "--output", str(sig),
         "--detach-sign", str(sums)],
        check=True,
    )
    return sig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True, type=Path, help="the built provider")
    ap.add_argument("--out", required=True, type=Path, help="output directory (e.g. dist)")
    ap.add_argument("--version", default=None, help="default: Cargo.toml's version")
    ap.add_argument("--target", default="linux_amd64", help="OS_ARCH of the binary")
    ap.add_argument("--address", default=DEFAULT_ADDRESS,
                    help="HOST/NAMESPACE/TYPE the mirrors serve (default: %(default)s)")
    ap.add_argument("--gpg-key", default=os.environ.get("GPG_KEY") or None,
                    help="sign SHA256SUMS with this key (default: $GPG_KEY)")
    args = ap.parse_args()

    version = args.version or cargo_version()
    if not args.binary.is_file():
        sys.exit(f"package: {args.binary} is not a file (build it first)")
    if len(args.address.split("/")) != 3:
        sys.exit(f"package: --address must be HOST/NAMESPACE/TYPE, not {args.address!r}")
    if args.address.split("/")[2] != NAME.removeprefix("terraform-provider-"):
        # Terraform finds a package by TYPE in its file names, which are NAME's here.
        sys.exit(f"package: --address must end in /{NAME.removeprefix('terraform-provider-')}, "
                 f"the type this provider's files are named for, not {args.address!r}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = f"{NAME}_{version}"
    zip_name = f"{base}_{args.target}.zip"
    zip_path = out / zip_name
    write_zip(args.binary, f"{NAME}_v{version}", zip_path)
    manifest = out / f"{base}_manifest.json"
    manifest.write_text(json.dumps(MANIFEST) + "\n", encoding="utf-8")

    # SHA256SUMS over every zip of this version and the manifest, as the scaffolding does.
    sums = out / f"{base}_SHA256SUMS"
    covered = sorted(p for p in out.iterdir()
                     if p.is_file() and p.name.startswith(base + "_")
                     and (p.name.endswith(".zip") or p == manifest))
    sums.write_text("".join(f"{sha256_hex(p.read_bytes())}  {p.name}\n" for p in covered),
                    encoding="utf-8")
    sig = out / (sums.name + ".sig")
    if args.gpg_key:
        sign(sums, args.gpg_key)
        signed = f"signed with {args.gpg_key}: {sig.name}"
    else:
        sig.unlink(missing_ok=True)
        signed = "not signed: no GPG key given (GPG_KEY=KEYID to sign)"

    h1 = h1_of_zip(zip_path)
    zh = zh_of_file(zip_path)
    data = zip_path.read_bytes()

    # Filesystem mirror, packed layout: HOST/NAMESPACE/TYPE/NAME_VERSION_TARGET.zip.
    fs_dir = out / "fs-mirror" / args.address
    fs_dir.mkdir(parents=True, exist_ok=True)
    (fs_dir / zip_name).write_bytes(data)

    # Network mirror: HOST/NAMESPACE/TYPE/index.json, VERSION.json and the zip beside
    # them; the archive's url is relative to VERSION.json, so the tree can be served
    # from any base URL.
    net_dir = out / "net-mirror" / args.address
    net_dir.mkdir(parents=True, exist_ok=True)
    (net_dir / zip_name).write_bytes(data)
    version_doc = net_dir / f"{version}.json"
    archives = {}
    if version_doc.is_file():
        archives = json.loads(version_doc.read_text(encoding="utf-8")).get("archives", {})
    archives[args.target] = {"url": zip_name, "hashes": [h1, zh]}
    write_json(version_doc, {"archives": archives})
    versions = sorted(p.stem for p in net_dir.glob("*.json") if p.name != "index.json")
    write_json(net_dir / "index.json", {"versions": {v: {} for v in versions}})

    print(f"package: {zip_path} ({len(data)} bytes)")
    print(f"package: {sums.name} {signed}")
    print(f"package: {h1}")
    print(f"package: {zh}")
    print(f"package: filesystem mirror {out / 'fs-mirror'}")
    print(f"package: network mirror    {out / 'net-mirror'} (serve over HTTPS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
