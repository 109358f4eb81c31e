"""smoke_abliterated: step of the refusal-direction abliteration (RESULTS.md, Recipe)."""

def main() -> None:
    print("smoke_abliterated")


if __name__ == "__main__":
    main()
