"""densessl.dense"""
