from optiml_engine.cli import main

raise SystemExit(main())
