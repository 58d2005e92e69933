"""The incident-000 prober written the way a Python script would write it:
socket(), connect(), close() in a loop. Python's connect with a timeout is a
non-blocking connect() + poll() + SO_ERROR, as real clients do (KERNEL-FACTS
8); without a timeout it is a plain blocking connect().

usage: py_prober.py HOST PORT COUNT {blocking|timeout}
Prints one line per failure and `ok=N eaddrnotavail=N other=N` last.
"""

import errno
import socket
import sys


def main() -> int:
    host, port, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ok = eaddrnotavail = other = 0
    for i in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        if mode == "timeout":
            s.settimeout(2.0)
        try:
            s.connect((host, port))
            ok += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            print(f"probe {i}: connect: {name} ({e.strerror})")
            if e.errno == errno.EADDRNOTAVAIL:
                eaddrnotavail += 1
            else:
                other += 1
        finally:
            s.close()
    print(f"ok={ok} eaddrnotavail={eaddrnotavail} other={other}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
