from gymlab.cli import main

main()
