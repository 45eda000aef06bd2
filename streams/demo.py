"""``idsync demo``: the bundled HR feed into a throwaway slapd, on the embedded broker."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from connectors.ldap.slapd import Slapd
from streams import samples

SAMPLES = Path(samples.__file__).parent


def run_demo(args: argparse.Namespace) -> int:
    from streams.cli import cmd_sync

    work = Path(tempfile.mkdtemp(prefix="idsync-demo-"))
    slapd = Slapd(work / "slapd")
    try:
        slapd.start()
        slapd.add_ou("disabled")
        print(f"slapd on {slapd.uri} (suffix {slapd.suffix}); working directory {work}", file=sys.stderr)
        hr = Path(args.hr).resolve() if args.hr else SAMPLES / "hr.csv"
        os.environ.update(
            IDSYNC_DEMO_HR=str(hr),
            IDSYNC_LDAP_URI=slapd.uri,
            IDSYNC_LDAP_BIND_DN=slapd.bind_dn,
            IDSYNC_LDAP_PASSWORD=slapd.password,
            IDSYNC_LDAP_BASE_DN=slapd.suffix,
        )
        sync_args = argparse.Namespace(
            config=str(SAMPLES / "demo.yaml"),
            bootstrap_servers="",
            data_dir=str(work / "data"),
            cycles=1,
            json=None,
            verbose=args.verbose,
        )
        code = cmd_sync(sync_args)
        print(f"ou=people now holds {slapd.entry_count(slapd.people_dn, scope='level')} entries")
        return code
    finally:
        slapd.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
