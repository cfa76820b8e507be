import sys

from bertdesk_gui.app import main

sys.exit(main())
