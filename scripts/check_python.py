"""Refuse, before any install, a Python that the chosen stack has no wheels for.

Usage: python scripts/check_python.py [current|spark35]
"""
import sys

# The Pythons each stack's pins publish wheels for (requirements/runtime.txt, requirements/spark35.txt).
SUPPORTED = {"current": [(3, 11), (3, 12), (3, 13)], "spark35": [(3, 11)]}

stack = sys.argv[1] if len(sys.argv) > 1 else "current"
found = sys.version_info[:2]
allowed = SUPPORTED[stack]
if found not in allowed:
    names = ", ".join("%d.%d" % v for v in allowed)
    sys.exit("error: STACK=%s needs Python %s (found %d.%d at %s); set PYTHON=/path/to/python3.x"
             % (stack, names, found[0], found[1], sys.executable))
