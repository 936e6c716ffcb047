from pi0cli.cli import main

main()
