from seq2vae.cli import main

raise SystemExit(main())
