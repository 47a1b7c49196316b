from serving.cli import main

if __name__ == "__main__":  # the engine process (spawn) imports this module again
    main()
