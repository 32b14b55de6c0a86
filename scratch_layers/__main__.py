"""``python -m scratch_layers verify MODEL``: see :mod:`scratch_layers.verify.cli`."""
import sys

from .verify.cli import DESCRIPTION, verify


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m scratch_layers verify MODEL [--input FILE] [-n N] [--seed S] [--backend NAME]\n\n" + DESCRIPTION)
        return 0 if argv else 2
    if argv[0] != "verify":
        print(f"unknown command {argv[0]!r}; the command is 'verify' (see --help)", file=sys.stderr)
        return 2
    return verify(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
