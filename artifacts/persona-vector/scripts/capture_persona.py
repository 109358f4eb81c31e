"""capture_persona: step of the persona-vector reproducer (README, Reproducer)."""

def main() -> None:
    print("capture_persona")


if __name__ == "__main__":
    main()
