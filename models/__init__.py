"""Architecture presets of bertdesk, as JSON data (installed as `bertdesk_models`)."""
