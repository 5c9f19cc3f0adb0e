"""``python -m zerrow_pool preload-path | run SCRIPT [ARGS...]``"""

import sys

from ._preload import preload_path, run_with_preload

USAGE = """usage: python -m zerrow_pool preload-path
       python -m zerrow_pool run SCRIPT [ARGS...]

preload-path  print the path of libzerrow_preload.so (use it as LD_PRELOAD)
run           run SCRIPT with the preload library, so Arrow's default pool is zerrow's"""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["preload-path"]:
        print(preload_path())
        return 0
    if argv[:1] == ["run"] and len(argv) >= 2:
        run_with_preload(argv[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
