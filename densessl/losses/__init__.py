"""densessl.losses"""
