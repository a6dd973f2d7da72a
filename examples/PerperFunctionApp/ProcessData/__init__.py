import logging

import azure.functions as func
import perper.functions as perper


def main(context: perper.StreamContex, data: int):
    return data * 10
