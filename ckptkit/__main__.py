from ckptkit.cli import main

main()
