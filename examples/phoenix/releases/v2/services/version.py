"""Version of the whole Phoenix system; each release overlay replaces this file."""

VERSION = "2.0.0"
