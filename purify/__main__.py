import sys

from purify import demo

if __name__ == "__main__":
  if sys.argv[1:] != ["demo"]:
    print("usage: python -m purify demo")
    sys.exit(2)
  sys.exit(demo.main())
