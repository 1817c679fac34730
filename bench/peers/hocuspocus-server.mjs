#!/usr/bin/env node
// @hocuspocus/server with no extensions (nothing persisted), on 127.0.0.1 and a free port.
// Prints `listening on PORT` once it accepts connections; stops on SIGTERM.
import { Server } from '@hocuspocus/server'

const server = new Server({
  address: '127.0.0.1',
  port: 0,
  quiet: true,
  stopOnSignals: true
})
// The `ws` server's permessage-deflate is off by default: the same as every other server here.
await server.listen()
process.stdout.write(`listening on ${server.address.port}\n`)
