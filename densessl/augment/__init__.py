"""densessl.augment"""
