"""Generated protocol packages (see protos/). Do not edit."""
