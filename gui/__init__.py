"""The bertdesk desktop app (PySide6), installed as `bertdesk_gui`."""
