from dynamiccl.cli import main

raise SystemExit(main())
