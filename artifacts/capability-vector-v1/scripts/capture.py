"""capture: step of the capability-vector v1 pipeline (see RESULTS.md)."""
import argparse


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=22)
    p.add_argument("--alpha", type=float, default=4.0)
    print(p.parse_args())


if __name__ == "__main__":
    main()
