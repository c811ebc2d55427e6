from unimodel.cli import main

raise SystemExit(main())
