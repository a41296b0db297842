"""A check script without a check function."""


def main():
    return True
