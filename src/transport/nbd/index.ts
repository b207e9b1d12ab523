/** The NBD transport: channels, one connection, a multi-conn session, extent readers. */
export { connectSocketChannel, channelFromStream, describeTarget, OPENSSH_PACING, type ByteChannel, type ChannelSink, type ReadPacing, type SocketTarget } from './channel.js';
export { openNbdConnection, NbdConnection, type BlockStatus, type ExportInfo, type NbdConnectionOptions, type StatusDescriptor } from './client.js';
export { NbdProtocolError, NbdServerError } from './errors.js';
export { NbdSession, type NbdDialer, type NbdSessionOptions, type NbdSource } from './session.js';
export {
  readFull,
  readDirty,
  readAllocationDepth,
  readClassified,
  FULL_READ_CONTEXTS,
  DEPTH_READ_CONTEXTS,
  dirtyReadContexts,
  newCounters,
  type ExtentReaderOptions,
  type ReaderCounters,
} from './readers.js';
export { CONTEXT_BASE_ALLOCATION, CONTEXT_ALLOCATION_DEPTH, dirtyBitmapContext } from './protocol.js';
