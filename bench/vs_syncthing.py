"""Side by side with Syncthing on scenario (a): one 1 GiB random file made on
device A arrives on device B, over loopback.

    .venv/bin/python bench/vs_syncthing.py [--size 1GiB] [--peer ../shared/bench/peer_syncthing.py]

Syncthing is measured by the shared harness (`peer_syncthing.py --only a`,
two peers, direct). Ferry has no live sync yet, so its figure is the time
for `ferry put` on A plus `ferry get` on B through the server (two hops,
measured by bench/transfer.py). Needs the `syncthing` binary on PATH
(Debian: apt-get install syncthing). Prints one JSON line and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from server.config import parse_size  # noqa: E402


def last_json(out: str, prefix: str = "") -> dict:
    lines = [
        ln[len(prefix) :]
        for ln in out.splitlines()
        if ln.startswith(prefix) and ln[len(prefix) :].startswith("{")
    ]
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    p.add_argument("--peer", type=Path, default=HERE.parent.parent / "shared" / "bench" / "peer_syncthing.py")
    args = p.parse_args()

    st = subprocess.run([sys.executable, str(args.peer), "--only", "a", "--big-bytes", str(args.size)],
                        capture_output=True, text=True, check=True)  # fmt: skip
    syncthing = last_json(st.stdout, "RESULT ")
    fe = subprocess.run([sys.executable, str(HERE / "transfer.py"), "--size", str(args.size)],
                        capture_output=True, text=True, check=True)  # fmt: skip
    ferry = last_json(fe.stdout)
    ferry_s = args.size / (ferry["put_MBps"] * 1e6) + args.size / (ferry["get_MBps"] * 1e6)
    result = {
        "scenario": "a",
        "size_bytes": args.size,
        "syncthing_seconds": syncthing["seconds"],
        "syncthing_MBps": syncthing["MBps"],
        "ferry_put_plus_get_seconds": round(ferry_s, 2),
        "ferry_put_MBps": ferry["put_MBps"],
        "ferry_get_MBps": ferry["get_MBps"],
        "ferry_over_syncthing_time": round(ferry_s / syncthing["seconds"], 2),
    }
    print(json.dumps(result))
    print(f"\nscenario a, {args.size / 2**30:.2f} GiB: Syncthing {syncthing['seconds']:.1f}s (direct, A→B); "
          f"Ferry {ferry_s:.1f}s (put A→server + get server→B); ratio {result['ferry_over_syncthing_time']}x")  # fmt: skip


if __name__ == "__main__":
    main()
