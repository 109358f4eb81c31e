"""compute_refusal_dir: step of the refusal-direction abliteration (RESULTS.md, Recipe)."""

def main() -> None:
    print("compute_refusal_dir")


if __name__ == "__main__":
    main()
