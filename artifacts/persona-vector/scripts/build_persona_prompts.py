"""build_persona_prompts: step of the persona-vector reproducer (README, Reproducer)."""

def main() -> None:
    print("build_persona_prompts")


if __name__ == "__main__":
    main()
