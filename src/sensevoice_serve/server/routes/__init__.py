"""One router per API area; ``create_app`` includes them. Routes get the Service through ``dependencies``."""
