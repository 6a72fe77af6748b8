from lstmlm.cli import main

main()
