"""compute_persona_dir: step of the persona-vector reproducer (README, Reproducer)."""

def main() -> None:
    print("compute_persona_dir")


if __name__ == "__main__":
    main()
