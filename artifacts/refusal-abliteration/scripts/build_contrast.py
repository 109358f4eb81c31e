"""build_contrast: step of the refusal-direction abliteration (RESULTS.md, Recipe)."""

def main() -> None:
    print("build_contrast")


if __name__ == "__main__":
    main()
