"""abliterate: step of the refusal-direction abliteration (RESULTS.md, Recipe)."""

def main() -> None:
    print("abliterate")


if __name__ == "__main__":
    main()
