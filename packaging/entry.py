"""The frozen binary's entry point: the same as the ``arrowport`` console script."""

import sys

if sys.argv[1:2] == ["--arrowport-query-zygote"]:  # the query processes' parent (sql_zygote)
    from arrowport.storage.sql_zygote import main as zygote

    zygote(sys.argv[2:])
else:
    from arrowport.cli import main

    main()
