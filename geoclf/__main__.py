"""python -m geoclf"""
from geoclf.cli import main

main()
