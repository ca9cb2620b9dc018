from mockehr.cli import main

main()
