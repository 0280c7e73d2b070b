"""densessl.video"""
