PREFIX = "from a sibling module"
