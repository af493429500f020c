from label_anything.cli.parser import main

raise SystemExit(main())
