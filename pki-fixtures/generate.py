"""Generate Example Corp's enterprise PKI for tests and demos of the legacy identity bridge.

    python pki-fixtures/generate.py OUTDIR

Writes the files pki-fixtures/README.md lists into OUTDIR (keys 0600). The tests generate the same PKI
into a temporary directory (the ``enterprise_pki`` fixture); nothing generated is checked in, so no test
depends on certificates that expire.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from tests.support.enterprise_pki import generate_enterprise_pki


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python pki-fixtures/generate.py OUTDIR", file=sys.stderr)
        return 2
    pki = generate_enterprise_pki(Path(argv[0]))
    for path in sorted(pki.directory.iterdir()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
