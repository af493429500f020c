from label_anything.cli import main

raise SystemExit(main())
