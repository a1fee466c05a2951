import sys

if sys.argv[1:2] == ["--arrowport-query-zygote"]:  # the query processes' parent (sql_zygote)
    from .storage.sql_zygote import main as zygote

    zygote(sys.argv[2:])
else:
    from .cli import main

    main()
