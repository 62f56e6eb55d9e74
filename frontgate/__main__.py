from frontgate.cli import main

main()
