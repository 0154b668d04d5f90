from convrepair.cli import main

main()
