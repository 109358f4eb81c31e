"""capture_refusal: step of the refusal-direction abliteration (RESULTS.md, Recipe)."""

def main() -> None:
    print("capture_refusal")


if __name__ == "__main__":
    main()
